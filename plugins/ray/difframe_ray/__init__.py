"""difframe-ray: the "ray" engine for difframe job files. Importing this package does not import Ray."""

ENGINE = "difframe_ray.engine:RayEngine"
