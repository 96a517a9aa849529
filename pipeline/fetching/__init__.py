"""The fetch stage's helpers: resumable downloads (`download`) and safe archive extraction (`archive`)."""
