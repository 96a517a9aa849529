"""The generate stage's helpers, which the listening page shares: the sampler that continues a primer with the model,
the rules it samples under (`decoding`), and the primers (`primers`)."""
