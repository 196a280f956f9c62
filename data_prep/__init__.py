"""data_prep: raw text to a trained tokenizer and packed, cached shards, plus what objectives need
(word boundaries, similar-word tables, co-occurrence statistics). Entry point: `data_prep.prepare.prepare`."""
