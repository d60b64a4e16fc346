# frozen_string_literal: true

module OpsChain
  # What opschain-action and opschain-lint do: load actions.rb from the repository with the step context's
  # env vars and file properties in place, then run the requested actions (Rake tasks) or check them.
  module Runner
    module_function

    def actions_file = File.join(Paths.repo_dir, 'actions.rb')

    # opschain-action [ACTION…] [-T|-AT|other Rake options]: runs the actions in this step; with no action,
    # Rake's default. Writes step_result.json whatever the outcome (not when only listing). With
    # OPSCHAIN_DRY_RUN=true nothing runs: step_result.json gets the expected_step_tree instead.
    def action(argv)
      listing = argv.any? { |arg| arg.start_with?('-') }
      at_exit { write_result } unless listing
      app = Rake.application
      app.standard_exception_handling do
        prepare(write_files: !listing)
        setup_gems
        app.init('opschain-action', ['--rakefile', actions_file, *argv])
        # Rake keeps `desc` texts only when asked; the expected step tree shows them.
        Rake::TaskManager.record_task_metadata = true if dry_run?
        app.load_rakefile
        Dsl.resolve_prerequisites!
        unless listing
          app.top_level_tasks.map! { |name| name.include?('[') ? name : Dsl.resolve(name) }
          OpsChain.requested_actions = app.top_level_tasks.map { |name| name.sub(/\[.*\z/m, '') }
          Dsl.start_step(OpsChain.requested_actions)
        end
        if !listing && dry_run?
          OpsChain.expected_step_tree = Dsl.expected_tree(OpsChain.requested_actions)
          puts "opschain-action: dry run (OPSCHAIN_DRY_RUN=true): #{OpsChain.requested_actions.join(' ')} not run; step_result.json has the expected_step_tree"
        else
          app.top_level
        end
      end
    end

    # opschain-lint: actions.rb loads, and every prerequisite names an action. Exit status 1 when not.
    def lint
      prepare(write_files: false)
      setup_gems
      Rake.application.init('opschain-lint', ['--rakefile', actions_file])
      Rake.application.load_rakefile
      Dsl.resolve_prerequisites!
      problems = Rake::Task.tasks.flat_map do |task|
        task.prerequisites.reject { |name| Rake::Task.task_defined?(name) || Rake::Task.task_defined?("#{task.scope.path}:#{name}") }
            .map { |name| "#{task.name}: prerequisite #{name} is not an action" }
      end
      Dsl.actions.each_value do |info|
        next if info.steps.respond_to?(:call)

        Dsl.step_names(info.steps).each do |child|
          next if BuiltinSteps[child]

          warn "opschain-lint: #{info.name}: child step #{child} is not an action here" unless Rake::Task.task_defined?(Dsl.resolve(child))
        end
      end
      problems.each { |problem| warn "opschain-lint: #{problem}" }
      puts "opschain-lint: #{actions_file} defines #{Rake::Task.tasks.length} actions" if problems.empty?
      problems.empty?
    end

    # The result, whatever happened; a step context that cannot be read is reported once, by what failed on it.
    def write_result
      OpsChain.write_result
    rescue StandardError => e
      warn "opschain-action: step_result.json not written: #{e.class}: #{e.message}"
    end

    def dry_run? = ENV.fetch('OPSCHAIN_DRY_RUN', '') == 'true'

    def prepare(write_files:)
      Dir.chdir(Paths.repo_dir)
      ENV.update(OpsChain.env)
      OpsChain.write_files! if write_files
    end

    def setup_gems(check_only: false)
      check_only ? Gems.check! : Gems.setup!
    rescue MissingGemsError => e
      warn "opschain: #{e.message}"
      exit 1
    end
  end
end
