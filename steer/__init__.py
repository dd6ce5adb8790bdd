"""xlalign steer: write to the model (interventions, schedules, closed-loop evaluation) and the CLI."""
