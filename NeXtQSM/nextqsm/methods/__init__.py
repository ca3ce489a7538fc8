"""Classical QSM methods: one function per step, numpy/scipy or torch, fields and chi in ppm."""
