"""Everything about the Mosquitto broker: config rendering, ACL generation, accounts, process."""
