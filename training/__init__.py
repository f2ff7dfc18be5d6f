"""Training side of bonserve: data, verifiable tasks, trainers and the checkpoint registry."""
