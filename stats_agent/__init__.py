"""Stats agent: characters, XP, levels and achievements, exactly once over MQTT."""
