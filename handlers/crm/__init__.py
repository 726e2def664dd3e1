"""CRM (Kommo): connections and their secrets, pipeline sync, signed webhooks."""
