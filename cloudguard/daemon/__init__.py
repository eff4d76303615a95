"""The workstation daemon (issue 11): watch each bound folder, push what settles, pull what
other devices pushed. Events are hints: the engine's push compares what it finds with the
index, so a missed or spurious event costs a look, never a wrong upload."""
