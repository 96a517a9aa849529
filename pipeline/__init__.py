"""The MAESTRO-XL data pipeline: one module per DVC stage, driven by the `maestro-xl` command line."""
