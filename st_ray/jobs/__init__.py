"""The jobs behind the thin scripts in jobs/: argument handling and one call each."""
