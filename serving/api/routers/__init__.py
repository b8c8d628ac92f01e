"""One ``APIRouter`` per resource: users, items, events, health, dashboard."""
