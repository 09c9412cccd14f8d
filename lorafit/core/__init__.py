"""What every stage reads: errors and exit codes, paths, the facts of methods and templates, the device and the
process's rank. Standard library only at import."""
