"""Django's command line for the example project, from a checkout of aegis_mw:

python examples/django_project/manage.py runserver
"""

import os
import sys
from pathlib import Path

# The checkout's root, so that ``examples.django_project`` imports from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
