from services.planner.app import NAME, create_app
from shared.service import run

if __name__ == "__main__":
    run(create_app, NAME)
