"""Image I/O: sources (slice folders, multi-page TIFF, OME-TIFF), the OME-TIFF writer
and the pixel hash. Everything streams plane by plane; no whole stack is held in memory.
"""
