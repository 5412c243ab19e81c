"""Network factories. Every network takes ``spatial_dims`` so one class serves 2D and 3D."""
