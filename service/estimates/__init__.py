"""Cost estimates: what a job will take, from rates measured on this deployment."""
