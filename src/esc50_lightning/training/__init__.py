"""Where logits become a trained model and its metrics: the LightningModule (loss over the labels of
mixed clips, EMA-ready weights), epoch-level metrics, learning-rate and EMA schedules, the time
budget, numeric precision."""
