"""Testing kit: brokers (the real Mosquitto and the in-memory twin behind one interface), a
recorder, a wrapper for the mosquitto CLIs, real agent processes, a PostgreSQL for tests, a QoS
0 flooder and a TCP proxy that counts what the broker delivers, and waits with deadlines. Used
by the test suite and the reliability run; nothing here runs in production.
"""
