"""One small pure function per check, grouped by area: data, model, training, temporal."""
