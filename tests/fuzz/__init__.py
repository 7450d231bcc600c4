"""A seeded corpus of bad input mixed into good readings, and the accounting of what each
message must cause (tests/integration/test_drill_fuzz.py runs it through every stage)."""
