--
-- PostgreSQL database dump
--

\restrict E3NbHwZdJiZRSDToyw81gtKlgyfztMMSSCLoEJtFIVemGD2GBNMgTKdlLxG1mmu

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: touch(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN NEW.body := NEW.body || '!'; RETURN NEW; END $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: child; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.child (
    id bigint NOT NULL,
    parent_id integer,
    body text
);


--
-- Name: child_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.child_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: child_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.child_id_seq OWNED BY public.child.id;


--
-- Name: p; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.p (
    a integer NOT NULL,
    b text
)
PARTITION BY RANGE (a);


--
-- Name: p1; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.p1 (
    a integer NOT NULL,
    b text
);


--
-- Name: parent; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.parent (
    id integer NOT NULL,
    name text
);


--
-- Name: parent_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.parent_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: parent_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.parent_id_seq OWNED BY public.parent.id;


--
-- Name: p1; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.p ATTACH PARTITION public.p1 FOR VALUES FROM (0) TO (100);


--
-- Name: child id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.child ALTER COLUMN id SET DEFAULT nextval('public.child_id_seq'::regclass);


--
-- Name: parent id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.parent ALTER COLUMN id SET DEFAULT nextval('public.parent_id_seq'::regclass);


--
-- Data for Name: child; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.child (id, parent_id, body) FROM stdin;
1	2	row 1!
2	3	row 2!
3	4	row 3!
4	5	row 4!
5	6	row 5!
6	7	row 6!
7	8	row 7!
8	9	row 8!
9	10	row 9!
10	1	row 10!
11	2	row 11!
12	3	row 12!
13	4	row 13!
14	5	row 14!
15	6	row 15!
16	7	row 16!
17	8	row 17!
18	9	row 18!
19	10	row 19!
20	1	row 20!
\.


--
-- Data for Name: p1; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.p1 (a, b) FROM stdin;
\.


--
-- Data for Name: parent; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.parent (id, name) FROM stdin;
1	p1
2	p2
3	p3
4	p4
5	p5
6	p6
7	p7
8	p8
9	p9
10	p10
\.


--
-- Name: child_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.child_id_seq', 20, true);


--
-- Name: parent_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.parent_id_seq', 10, true);


--
-- Name: child child_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.child
    ADD CONSTRAINT child_pkey PRIMARY KEY (id);


--
-- Name: p p_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.p
    ADD CONSTRAINT p_pkey PRIMARY KEY (a);


--
-- Name: p1 p1_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.p1
    ADD CONSTRAINT p1_pkey PRIMARY KEY (a);


--
-- Name: parent parent_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.parent
    ADD CONSTRAINT parent_name_key UNIQUE (name);


--
-- Name: parent parent_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.parent
    ADD CONSTRAINT parent_pkey PRIMARY KEY (id);


--
-- Name: child_parent; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX child_parent ON public.child USING btree (parent_id);


--
-- Name: INDEX child_parent; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON INDEX public.child_parent IS 'hi';


--
-- Name: p_a; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX p_a ON ONLY public.p USING btree (a);


--
-- Name: p1_a_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX p1_a_idx ON public.p1 USING btree (a);


--
-- Name: p1_a_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.p_a ATTACH PARTITION public.p1_a_idx;


--
-- Name: p1_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.p_pkey ATTACH PARTITION public.p1_pkey;


--
-- Name: child child_touch; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER child_touch BEFORE INSERT ON public.child FOR EACH ROW EXECUTE FUNCTION public.touch();


--
-- Name: child child_parent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.child
    ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES public.parent(id);


--
-- PostgreSQL database dump complete
--

\unrestrict E3NbHwZdJiZRSDToyw81gtKlgyfztMMSSCLoEJtFIVemGD2GBNMgTKdlLxG1mmu

