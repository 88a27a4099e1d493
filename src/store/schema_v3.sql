-- Callbox schema version 3: when each step of an audio call's reply happened, on the box's turns.
-- Milliseconds from the call's start, on the line's clock; NULL on text calls and on turns that
-- answer no caller speech (greeting, re-prompts, replies to keys).
ALTER TABLE turns ADD COLUMN caller_end_ms INTEGER;      -- the caller stopped speaking
ALTER TABLE turns ADD COLUMN transcript_ms INTEGER;      -- the transcript was ready
ALTER TABLE turns ADD COLUMN reply_ready_ms INTEGER;     -- the agent's reply text was ready
ALTER TABLE turns ADD COLUMN first_audio_ms INTEGER;     -- its first audio went out on the line
