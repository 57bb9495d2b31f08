"""What runs inside desktops and jobs: the `vre-job` command and dataset readers."""
