"""Load generation over HTTP (trace replay, server overhead) and its reports."""
