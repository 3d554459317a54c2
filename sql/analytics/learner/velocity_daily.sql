-- How fast each learner progressed through each course each day.
SELECT tumble(interval '1 day') AS window,
       user_id,
       course_id,
       count(*) AS events,
       count(*) FILTER (WHERE completed) AS topics_completed,
       sum(progress_delta) AS progress_gain,
       sum(minutes_spent) AS minutes_spent
FROM learning.progress
GROUP BY window, user_id, course_id
