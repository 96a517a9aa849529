"""The train stage's helpers (evaluate shares some): the data stream of segments (`segments`), what the loop feeds
the model (`batches`), checkpoint files and which one a run resumes (`checkpoints`), DDP under torchrun
(`distributed`), the CPU profile (`cpu_profile`), and DVCLive with the progress line (`live`)."""
