-- TagsIssued events store their tags packed since event version 2 (ADR 0013): the ids as
-- base64 of their 16 bytes each, the serials in an array beside them. This reads the tags of
-- a TagsIssued payload of either version, with their place in the event, for auditors and
-- for SQL that checks the store:
--   SELECT e.global_position, t.* FROM events e, issued_tags(e.payload) t
--    WHERE e.event_type = 'TagsIssued' ORDER BY e.global_position, t.ordinal;
-- Any other payload has no tags. (plpgsql, so that the payload is parsed once per call, not
-- once per tag.)
CREATE FUNCTION issued_tags(payload json)
RETURNS TABLE (ordinal bigint, tag_id uuid, serial text)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    tags    json := payload->'TagsIssued'->'tags';
    ids     bytea;
    serials json;
BEGIN
    CASE json_typeof(tags)
    WHEN 'object' THEN
        -- Version 2: {"ids": base64, "serials": [text or null, ...] (absent when none)}.
        ids := decode(tags->>'ids', 'base64');
        IF length(ids) % 16 <> 0 THEN
            RAISE EXCEPTION 'TagsIssued: "ids" holds % bytes, not whole 16-byte ids',
                length(ids);
        END IF;
        IF json_typeof(tags->'serials') = 'array' THEN
            serials := tags->'serials';
            IF json_array_length(serials) <> length(ids) / 16 THEN
                RAISE EXCEPTION 'TagsIssued: % serials for % ids',
                    json_array_length(serials), length(ids) / 16;
            END IF;
        END IF;
        -- The ids and the serials side by side, in one pass (no join).
        RETURN QUERY
            SELECT z.n, encode(substring(ids FROM z.n::int * 16 - 15 FOR 16), 'hex')::uuid,
                   z.serial
              FROM ROWS FROM (generate_series(1::bigint, length(ids) / 16),
                              json_array_elements_text(serials)) AS z(n, serial);
    WHEN 'array' THEN
        -- Version 1: [{"tag_id": ..., "serial": ...}, ...].
        RETURN QUERY
            SELECT v.i, (v.t->>'tag_id')::uuid, v.t->>'serial'
              FROM json_array_elements(tags) WITH ORDINALITY AS v(t, i);
    ELSE
        RETURN;
    END CASE;
END $$;
