"""Data: the job's data config and bundle (digits, synthetic, image data sets), each image data
set's layout, and sharding across workers."""
