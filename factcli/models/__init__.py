"""Built-in architectures and user factories."""
