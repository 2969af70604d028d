"""Scale-out: the engine as Ray Serve replicas behind an application-aware router.

`router.py` (pure routing), `replica.py` (one engine replica, no Ray), `frontend.py` (the router's
Engine-shaped facade that the server app serves), `deployment.py` and `launch.py` (Ray Serve).
Only the last two import ray, and only when `otas serve --backend ray` runs.
"""
