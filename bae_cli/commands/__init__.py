"""Importing this package registers every command on the app."""
