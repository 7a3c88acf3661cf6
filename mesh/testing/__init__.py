"""Testing kit: real processes, a PostgreSQL for tests, polling with deadlines.

Used by the test suite and by the reliability run in bench/; nothing here runs in production.
"""
