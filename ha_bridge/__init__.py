"""Home Assistant bridge: MQTT discovery for every character and routine."""
