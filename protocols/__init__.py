"""Wire contracts shared by the gateway and the devices."""
