"""The train stage's helpers: which checkpoint a run resumes and where every other run's state goes (`resume`), and
what the loop feeds the model (`batches`)."""
