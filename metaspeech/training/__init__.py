"""Lightning glue: the LightningModule and its outer step, loss scaling, schedule, checkpoints, callbacks, loggers."""
