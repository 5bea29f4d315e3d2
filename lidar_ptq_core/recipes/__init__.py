"""Model recipes: the only modules that know both a model family and lidar_ptq_core.quant."""
