"""edgesim: a Docker-free local IoT Edge (edgeHub emulator, module supervisor, Azurite launcher)."""
