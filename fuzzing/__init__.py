"""Coverage-guided fuzzing (atheris) of the frame splitter and the server core; see fuzzing/README.md."""

TARGETS = ("framing", "server")
