"""Everything that writes into Kafka from outside: the MQTT bridge, gateway producers, the
master-data publisher and the gateway simulator."""
