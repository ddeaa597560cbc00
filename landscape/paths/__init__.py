"""Loss along paths and planes in parameter space: the 1-D line, barrier heights, the 2-D surface, mode
connectivity between two trained copies, and Bézier curves."""
