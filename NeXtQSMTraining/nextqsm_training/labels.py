"""Label -> tissue class table, and realistic susceptibility [ppm] per tissue class.

Every label-map source (SynthSeg training maps, FreeSurfer ``aseg``/``aparc+aseg``, SynthSeg
output, the procedural head) uses FreeSurfer label numbers; this module maps each of them to one
of the tissue classes below. Susceptibilities are in ppm **relative to CSF/water** (CSF = 0),
the usual QSM reference; air is ~ +9.2 ppm relative to tissue (air ~ +0.36, water ~ -9.05 ppm
absolute), cortical bone ~ -2 ppm.

SynthSeg extra-cerebral codes 502-530 (undocumented upstream, except 507)
----------------------------------------------------------------------------
Identified on ``training_seg_01`` (and checked on ``_07``) from location relative to the brain
centroid (maps are LIA: axis 1 = inferior, axis 2 = anterior), layer order along rays from the
brain centre outwards, face-neighbour statistics and size (1 mm voxels). Layer order along every
ray through the vertex and the sides is always ``brain -> 24 (CSF) -> 515 (4-8 mm) -> 507
(4-7 mm) -> 511 (2-4 mm) -> 0 (air)``.

====  ========  =====================================================  =======================
code  ml (01)   evidence                                                class
====  ========  =====================================================  =======================
515   428       first layer outside CSF everywhere (4-8 mm thick),      BONE (skull)
                2251 fragments (thin facial/skull-base bones), 72 %
                of 516's faces touch it; ~ skull volume
516   111       sandwiched *inside* 515 on vertex rays                 MARROW (diploe / fatty
                (``515 516 515``), 72 % of its faces touch 515         marrow, bone + fat)
507   1804      the tissue between skull and skin; documented in        SOFT_TISSUE (scalp,
                SynthSeg tutorial 2 as extra-cerebral soft tissue       muscle, fat, neck)
511   432       outermost 2-4 mm layer, 51 % of faces touch air (0),    SOFT_TISSUE (skin)
                49 % touch 507
506   14        anterior (+87 mm), 4 compact blobs 90 mm apart in x     SOFT_TISSUE (eyes:
                (two globes), 95 % surrounded by 507, ~7 ml each       water-like)
508   3.5       orbit, next to 507 and bone (optic nerves / orbital     SOFT_TISSUE
                muscles)
530   0.6       orbit apex, 21 % next to CSF (optic nerve)              SOFT_TISSUE
509   37        midline (32 mm wide), anterior-inferior, 74 mm deep     SOFT_TISSUE (nasal
                (face to pharynx), 67 % of faces touch *air* (0):       mucosa / turbinates;
                lines the nasal cavity and sinuses                      the air itself is 0)
512   8.7       midline, continues the brain stem downwards to the      SOFT_TISSUE (spinal
                bottom of the FOV, 66 % next to CSF                     cord, outside the mask)
514   14        thin pieces between CSF and skull, e.g. the midline     VENOUS_SINUS (dura and
                vertex (superior sagittal sinus) and the occiput        dural venous sinuses)
                (confluence / transverse sinus); 626 fragments
502   12        tubes (69 pieces) from the skull base down the neck,    EXTRA_VESSEL (carotid,
                bilateral, next to soft tissue and CSF                  vertebral, jugular)
0     --        background; *inside* the head envelope it fills the     AIR
                sinuses, nasal cavity and airways (it is connected to
                the outside through the nostrils), so 0 is air
====  ========  =====================================================  =======================

Labels 136/137/163/164 (FreeSurfer-LUT names Caudate-Putamen / Subcortical-Gray-Matter) lie in
the basal-ganglia region of the SynthSeg maps (centroids 17-32 mm lateral of the brain centre):
classed as deep grey matter (DEEP_GM_OTHER). 25/57 ("Lesion") are in the white matter of the
SynthSeg maps: classed as WM. A user's ``aseg`` has no extra-cerebral labels; its 0 is then
"outside the brain, unknown" and :mod:`label_sources` adds synthetic skull/scalp shells.

Realistic ppm (relative to CSF; literature ranges at 3 T, e.g. Deistung 2013, Li 2011,
Lim 2013 and the QSM 2016 challenge): see :data:`CLASS_PPM` (mean, sd of the per-label prior).
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue classes (compact integers)."""

    AIR = 0
    CSF = 1
    GM = 2                # cerebral cortex
    WM = 3                # cerebral white matter
    CAUDATE = 4
    PUTAMEN = 5
    PALLIDUM = 6
    THALAMUS = 7
    DEEP_NUCLEI = 8       # ventral DC (substantia nigra / red nucleus territory), brainstem nuclei
    BRAINSTEM = 9         # brain stem (mostly white matter)
    CEREBELLUM_GM = 10
    CEREBELLUM_WM = 11
    DEEP_GM_OTHER = 12    # hippocampus, amygdala, accumbens, unnamed subcortical grey
    VESSEL = 13           # intracerebral vessels (veins)
    SOFT_TISSUE = 14      # extra-cerebral soft tissue: scalp, skin, muscle, eyes, mucosa
    BONE = 15
    MARROW = 16           # diploe / fatty marrow
    VENOUS_SINUS = 17     # dura + dural venous sinuses
    EXTRA_VESSEL = 18     # extra-cranial large vessels
    FAT = 19


N_CLASSES = len(Tissue)

#: Classes that belong to the brain (inside the QSM mask region, ventricles included).
BRAIN_CLASSES = frozenset({Tissue.GM, Tissue.WM, Tissue.CAUDATE, Tissue.PUTAMEN, Tissue.PALLIDUM,
                           Tissue.THALAMUS, Tissue.DEEP_NUCLEI, Tissue.BRAINSTEM, Tissue.CEREBELLUM_GM,
                           Tissue.CEREBELLUM_WM, Tissue.DEEP_GM_OTHER, Tissue.VESSEL})
#: Code given (at load time, :mod:`label_sources`) to CSF voxels inside the 3 mm morphological
#: closing of the brain: sulcal CSF, which belongs to the QSM mask (outer CSF does not).
SULCAL_CSF = 1024

#: Labels of ventricles (CSF inside the brain; always part of the mask).
VENTRICLE_LABELS = frozenset({4, 5, 14, 15, 43, 44, 72})

#: Susceptibility prior per class, ppm relative to CSF: (mean, sd of per-label variation).
CLASS_PPM: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (9.2, 0.6),
    Tissue.CSF: (0.0, 0.005),
    Tissue.GM: (0.03, 0.012),
    Tissue.WM: (-0.04, 0.01),
    Tissue.CAUDATE: (0.075, 0.015),
    Tissue.PUTAMEN: (0.075, 0.02),
    Tissue.PALLIDUM: (0.175, 0.03),
    Tissue.THALAMUS: (0.04, 0.01),
    Tissue.DEEP_NUCLEI: (0.09, 0.03),
    Tissue.BRAINSTEM: (-0.02, 0.01),
    Tissue.CEREBELLUM_GM: (0.02, 0.01),
    Tissue.CEREBELLUM_WM: (-0.03, 0.01),
    Tissue.DEEP_GM_OTHER: (0.02, 0.01),
    Tissue.VESSEL: (0.38, 0.07),
    Tissue.SOFT_TISSUE: (0.0, 0.05),
    Tissue.BONE: (-2.0, 0.3),
    Tissue.MARROW: (-1.0, 0.3),
    Tissue.VENOUS_SINUS: (0.3, 0.08),
    Tissue.EXTRA_VESSEL: (0.15, 0.1),
    Tissue.FAT: (0.6, 0.1),
}

#: FreeSurfer / SynthSeg label -> tissue class. Unlisted labels: see :func:`tissue_of`.
LABEL_TO_TISSUE: dict[int, Tissue] = {
    0: Tissue.AIR,
    2: Tissue.WM, 41: Tissue.WM, 77: Tissue.WM, 78: Tissue.WM, 79: Tissue.WM, 85: Tissue.WM,
    25: Tissue.WM, 57: Tissue.WM, 251: Tissue.WM, 252: Tissue.WM, 253: Tissue.WM, 254: Tissue.WM,
    255: Tissue.WM, 192: Tissue.WM,
    3: Tissue.GM, 42: Tissue.GM,
    4: Tissue.CSF, 5: Tissue.CSF, 14: Tissue.CSF, 15: Tissue.CSF, 24: Tissue.CSF, 43: Tissue.CSF,
    44: Tissue.CSF, 72: Tissue.CSF, 31: Tissue.CSF, 63: Tissue.CSF,  # choroid plexus ~ CSF
    7: Tissue.CEREBELLUM_WM, 46: Tissue.CEREBELLUM_WM,
    8: Tissue.CEREBELLUM_GM, 47: Tissue.CEREBELLUM_GM,
    10: Tissue.THALAMUS, 49: Tissue.THALAMUS, 9: Tissue.THALAMUS, 48: Tissue.THALAMUS,
    11: Tissue.CAUDATE, 50: Tissue.CAUDATE,
    12: Tissue.PUTAMEN, 51: Tissue.PUTAMEN,
    13: Tissue.PALLIDUM, 52: Tissue.PALLIDUM,
    16: Tissue.BRAINSTEM, 170: Tissue.BRAINSTEM, 171: Tissue.BRAINSTEM, 172: Tissue.BRAINSTEM,
    173: Tissue.BRAINSTEM, 174: Tissue.BRAINSTEM, 175: Tissue.BRAINSTEM,
    28: Tissue.DEEP_NUCLEI, 60: Tissue.DEEP_NUCLEI,
    17: Tissue.DEEP_GM_OTHER, 53: Tissue.DEEP_GM_OTHER, 18: Tissue.DEEP_GM_OTHER, 54: Tissue.DEEP_GM_OTHER,
    26: Tissue.DEEP_GM_OTHER, 58: Tissue.DEEP_GM_OTHER, 136: Tissue.DEEP_GM_OTHER,
    137: Tissue.DEEP_GM_OTHER, 163: Tissue.DEEP_GM_OTHER, 164: Tissue.DEEP_GM_OTHER,
    30: Tissue.VESSEL, 62: Tissue.VESSEL,
    # SynthSeg extra-cerebral codes (evidence in the module docstring)
    502: Tissue.EXTRA_VESSEL, 506: Tissue.SOFT_TISSUE, 507: Tissue.SOFT_TISSUE, 508: Tissue.SOFT_TISSUE,
    509: Tissue.SOFT_TISSUE, 511: Tissue.SOFT_TISSUE, 512: Tissue.SOFT_TISSUE, 514: Tissue.VENOUS_SINUS,
    515: Tissue.BONE, 516: Tissue.MARROW, 530: Tissue.SOFT_TISSUE,
    # codes made by this package
    600: Tissue.FAT,            # procedural head: scalp fat
    SULCAL_CSF: Tissue.CSF,     # CSF inside the closed brain (see SULCAL_CSF)
}


def tissue_of(label: int) -> Tissue:
    """Tissue class of a FreeSurfer label. aparc cortical parcels (1000-2999) are GM, WM parcels
    (3000-4999) WM, other unknown brain labels (< 500) GM-like, unknown codes >= 500 soft tissue."""
    label = int(label)
    if label in LABEL_TO_TISSUE:
        return LABEL_TO_TISSUE[label]
    if 1000 <= label < 3000 or 11100 <= label < 13000:
        return Tissue.GM
    if 3000 <= label < 5000:
        return Tissue.WM
    if 0 < label < 500:
        return Tissue.DEEP_GM_OTHER
    return Tissue.SOFT_TISSUE


def tissue_lut(labels) -> np.ndarray:
    """Tissue class (uint8) for each label in ``labels`` (an iterable of ints)."""
    return np.array([int(tissue_of(l)) for l in labels], dtype=np.uint8)


def is_brain_label(label: int) -> bool:
    """True for labels of the brain region (brain tissue and ventricles; not CSF 24)."""
    return tissue_of(label) in BRAIN_CLASSES or int(label) in VENTRICLE_LABELS


def is_mask_label(label: int) -> bool:
    """True for labels inside the default QSM mask: the brain region plus sulcal CSF."""
    return is_brain_label(label) or int(label) == SULCAL_CSF


def class_ppm_table() -> np.ndarray:
    """(N_CLASSES, 2) array of (mean, sd) ppm per class, indexed by :class:`Tissue`."""
    t = np.zeros((N_CLASSES, 2), np.float32)
    for c, (m, s) in CLASS_PPM.items():
        t[int(c)] = (m, s)
    return t
