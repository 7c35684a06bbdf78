-- What each rollback point keeps, measured once when it is made (issue 9):
-- `rollback list` and ENVRESTORE_ROLLBACK_MAX_BYTES read these instead of
-- walking trees and asking database servers every time. NULL: not measured
-- yet (a point made before this migration; measured on first listing).
ALTER TABLE rollback_points ADD COLUMN disk_bytes bigint;
ALTER TABLE rollback_points ADD COLUMN db_bytes bigint;
ALTER TABLE rollback_points ADD COLUMN measured_at timestamptz;
