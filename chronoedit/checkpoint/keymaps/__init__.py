"""Key maps from each public format to our parameter names, one module per component."""
