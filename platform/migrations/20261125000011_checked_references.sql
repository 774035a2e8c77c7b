-- The write side's lookup rows name their factory (and a batch its product) through a
-- checked value instead of a foreign key: each insert writes
-- `(SELECT factory_id FROM factories WHERE factory_id = $n)`, which is NULL, and so
-- refused by the column's NOT NULL, when the factory does not exist. A foreign key would
-- also lock the factory's row (FOR KEY SHARE) on every insert, through a trigger and a
-- query of its own; a factory's clients registering products at once turn those locks
-- into multixacts (ADR 0010). What the foreign keys also guaranteed, that a referenced row
-- stays, is kept by refusing to delete factories and products: nothing in VokeTag deletes
-- them, and the events that created them are immutable anyway.
ALTER TABLE products DROP CONSTRAINT products_factory_id_fkey;
ALTER TABLE batches DROP CONSTRAINT batches_factory_id_fkey;
ALTER TABLE batches DROP CONSTRAINT batches_product_id_fkey;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_factory_id_fkey;

-- Referenced rows stay, and keep their id.
CREATE FUNCTION lookup_rows_are_permanent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'the id of a row of % never changes', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION '% rows are referenced by other lookup rows and never deleted: % is refused',
        TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER factories_are_permanent BEFORE DELETE OR UPDATE OF factory_id ON factories
    FOR EACH ROW EXECUTE FUNCTION lookup_rows_are_permanent();
CREATE TRIGGER factories_are_never_truncated BEFORE TRUNCATE ON factories
    FOR EACH STATEMENT EXECUTE FUNCTION lookup_rows_are_permanent();
CREATE TRIGGER products_are_permanent BEFORE DELETE OR UPDATE OF product_id ON products
    FOR EACH ROW EXECUTE FUNCTION lookup_rows_are_permanent();
CREATE TRIGGER products_are_never_truncated BEFORE TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION lookup_rows_are_permanent();
