"""Token file formats that trainers read."""
