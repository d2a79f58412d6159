"""Offline work on logs and profiles: replay (off-policy evaluation), reports, export.

Nothing here runs on the decision path; these modules may import numpy, the store and
optional extras (matplotlib, pyarrow) freely, but only inside the functions that need
the extras, so that importing the package stays cheap.
"""
