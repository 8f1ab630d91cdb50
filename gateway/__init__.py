"""The Raspberry Pi side: the bus master and the `hallgate` daemon."""
