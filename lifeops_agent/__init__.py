"""LifeOps agent: the daily timeline, completions, streaks and Oura sync."""
