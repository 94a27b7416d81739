"""Reading and writing volumes: Zarr containers, conversion, atomic writes, the dataset layout, region graph stores."""
